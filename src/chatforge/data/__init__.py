"""Data: readers for chat/preference/text formats, converters of named datasets, cleaning, caching."""
