"""The model artifact: manifest, safe loading and verification, scoring."""
