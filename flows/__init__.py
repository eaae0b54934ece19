"""Prefect flows: label-dataset (shards a folder and merges) and label-shard (labels one shard on one worker)."""
