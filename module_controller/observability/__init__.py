"""What people look at while the operator runs: metrics, health endpoints and logs."""
