"""StarFT pipeline: descriptors -> training -> evaluation -> reports."""
