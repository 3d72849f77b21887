"""The scheduling core: requests, the paged KV block manager and the scheduler. No torch."""
