"""Models and information sources: models, templates, conversations, RAG, feedback, labeling, reward, learning."""
