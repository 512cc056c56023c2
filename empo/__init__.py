"""EmPO: theory-driven preference data and training for empathetic response generation."""
