"""Sample selection: learn/val polygon split, OTB-like selection strategies, eco-regions."""
