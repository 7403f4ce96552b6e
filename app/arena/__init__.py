"""The blind arena: rounds and battles (`rounds`), the vote store (`store`), ratings (`ratings`)."""
