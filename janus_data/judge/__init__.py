"""The judge: semantic-consistency score S and a short reason for each (prompt, image) pair."""
