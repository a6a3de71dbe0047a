"""Roles: plain classes that rlft.runtime runs in-process or as Ray actors."""
