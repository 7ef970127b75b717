"""SAE files and published releases: SAELens, dictionary_learning, sparsify and Gemma Scope
layouts, release registries, the Hugging Face cache, and families loaded from them.
"""
