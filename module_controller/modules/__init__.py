"""Module pods: which modules a pod wants, what its status should say, what to send a base."""
