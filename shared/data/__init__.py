"""The data phase: ingest, licences, fetching and caching images, cache paths, splits, regions, sample data."""
