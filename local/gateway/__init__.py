"""The local gateway: Authorino's and Limitador's job on one machine (API keys, token limits,
usage counting) in front of OpenAI-compatible model backends."""

from local.gateway.service import GatewayService

__all__ = ["GatewayService"]
