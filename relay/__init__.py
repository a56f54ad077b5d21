"""The relay: crawls hosts, verifies every commit, re-sequences one firehose."""
