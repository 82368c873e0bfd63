"""Camera datasets, codecs, patch shards and loaders."""
