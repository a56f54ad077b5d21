"""The personal data server: accounts, signed repos, blobs, sync and the firehose."""
