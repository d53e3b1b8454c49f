"""Retrieval: collections, chunking, vectors (chromadb), keywords (BM25), grounding."""
