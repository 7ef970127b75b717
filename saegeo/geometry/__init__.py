"""Decoder geometry and activation overlap: decoder cosine, masked cosine, novel features."""
