"""The stream workers: Faust agents that wire the pure domain in `tables/` to topics."""
