"""Feed generators: index the firehose and serve getFeedSkeleton."""
