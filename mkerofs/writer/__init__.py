"""Build an image: walk the source -> plan inodes and layout -> compress data -> write."""
