"""Feature engineering, fitting, segment naming and writing model artifacts."""
