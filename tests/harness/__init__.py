"""Test harness for Starling: start and stop real servers on loopback.

starling  -- starlingd nodes (one or a cluster of N), the `starling` CLI
dovecot   -- a private Dovecot instance, to validate tests and for benchmarks
report    -- pass/fail counting with the "N passed, N failed" summary line
"""
