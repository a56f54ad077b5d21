"""The built-in feed algorithms, one module each.

==============  ==========================================================  ==========
name            what                                                        anonymous
==============  ==========================================================  ==========
``latest``      newest posts: all, or by ``authors`` / accounts on ``host``  yes
``whats-hot``   most liked, with time decay (likes halve every 6 hours)     yes
``following``   posts and reposts by the accounts the requester follows     no
``hashtag``     posts carrying any of ``tags``                             yes
``keyword``     posts whose text has any of ``words``                       yes
``language``    posts in ``langs`` (default: the request's Accept-Language)  yes
``mentions``    posts mentioning ``did`` (default: the requester)           no
==============  ==========================================================  ==========
"""

from __future__ import annotations

from feedgen.algos import following, language, latest, mentions, topics, whats_hot
from feedgen.plugins import Registry

__all__ = ["MODULES", "register_builtins"]

MODULES = (latest, whats_hot, following, topics, language, mentions)


def register_builtins(registry: Registry) -> None:
    for module in MODULES:
        registry.add_module(module)
