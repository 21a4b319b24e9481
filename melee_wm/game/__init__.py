"""Facts about the game itself (stage geometry, action states, how positions move), below every other floor."""
