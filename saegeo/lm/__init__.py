"""The language model side: harvesting activations, the truncated forward pass, text snippets."""
