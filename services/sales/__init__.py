"""The sales service: deals from qualified leads to won revenue."""
