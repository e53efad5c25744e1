"""One port (a typing.Protocol) per cloud, each with a thin adapter."""
