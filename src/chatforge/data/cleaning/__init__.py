"""The rules behind `chatforge data clean`, one module each, all pure functions over texts or record lists.

normalize (whitespace, full/half width, HTML, URLs, control characters), pii (ID numbers with GB 11643 checksum,
mobile numbers, e-mail, bank cards with Luhn), filters (length in characters or tokens, zh/en language, blocklist),
dedup (exact, and near-duplicate MinHash LSH on character n-grams), balance (downsampling by a key) and split
(stratified train/val/test). `chatforge.data.clean` chains them and writes the report.
"""
