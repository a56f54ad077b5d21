"""Feed generators: a host that indexes the network once and serves many feeds.

``roost feedgen serve`` runs :func:`feedgen.app.create_app`: an indexer reads a
relay's (or a PDS's) firehose into one index (:mod:`feedgen.sqlite` behind
the interfaces of :mod:`feedgen.storage`), and each feed is an algorithm, a
small Python plugin (:mod:`feedgen.plugins`), run over that index for
``app.bsky.feed.getFeedSkeleton``. Built-in algorithms live in
:mod:`feedgen.algos`; others come from configured modules or from the
``roost.feeds`` entry points of installed distributions.

Around it: :mod:`feedgen.backfill` (index whole repos), :mod:`feedgen.publish`
(the ``app.bsky.feed.generator`` record) and :mod:`feedgen.doctor` (check a
published feed end to end), all reachable from :mod:`feedgen.cli`.
"""
