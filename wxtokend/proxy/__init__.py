"""The WeChat API proxy: consumers call WeChat through wxtokend without any token.

``route`` decides where a call goes and what of it is forwarded, ``upstream`` talks to
WeChat, ``handler`` puts the token in and recovers a rejected one, ``listener`` serves it.
"""

from wxtokend.proxy.handler import ApiProxy
from wxtokend.proxy.listener import ProxyListener, bind_proxy

__all__ = ["ApiProxy", "ProxyListener", "bind_proxy"]
