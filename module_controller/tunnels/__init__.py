"""How the operator talks to bases: events in from them, commands out to them."""
