"""Online experiment analysis: A/B tests, power, interleaving, off-policy estimates and canary rollout.

Pure functions on counts and arrays: the serving layer assigns buckets and logs events; these turn the
logs into decisions.
"""
