"""Weight sync: versioned adapter payloads, fingerprints, and loading them into vLLM."""
