"""Bases sharded over the operator's live replicas, on Kubernetes Leases.

`assignment`: which live replica should own a base (rendezvous hashing). `membership`: this
replica's own Lease, the live replicas, and whether this one may act at all (fencing).
`ownership`: the node Leases, which of them this replica holds, and the claims, hand-offs
and renewals that keep exactly one acting owner per base.
"""
