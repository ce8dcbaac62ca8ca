"""The exporter service: owns the heaps, serves attach/map/unmap/pin, moves buffers."""
