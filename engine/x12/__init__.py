"""ASC X12 supply-chain documents: tokenizer, envelopes, readers, acks and the three-way match."""
