"""Manifests to requests: RayJob (and its pruned schema) and ResourcePolicy, parsed and checked at the
edge, turned into the plain ``Workload`` and ``Units`` the engine counts."""
