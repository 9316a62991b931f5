"""Router peering: routers of one site share a notification log and silences, and page once."""
