"""A live server refusing a new session for lack of connection slots, in any language.

SQLSTATE 53300 (``too_many_connections``) at connection start reaches the
client as text only: libpq hands over the server's message, not its code.
The server says it in its ``lc_messages`` language, and a server that is
full is alive: the manager must not fail it over (:mod:`pgfailover.probe`
keeps such a primary, :mod:`pgfailover.breaker` holds reads off such a
standby). Matching the English text alone made a full primary of a server
running in German or Japanese look dead.

The fragments below are PostgreSQL 15's own translations (its ``postgres``
message catalogs) of the four refusals: ``max_connections`` ("too many
clients already"), the slots reserved for superusers, and a role's or a
database's ``CONNECTION LIMIT``. Each is the longest fixed part of the
message (names quoted around ``%s`` vary); ``tests/unit/test_capacity.py``
checks them against the catalogs installed on the machine.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["CAPACITY_FRAGMENTS", "refused_for_capacity"]

CAPACITY_FRAGMENTS: Final[dict[str, tuple[str, ...]]] = {
    "en": (
        "too many clients already",
        "too many connections for role",
        "too many connections for database",
        "remaining connection slots are reserved",
    ),
    "de": (
        "schon zu viele Verbindungen",
        "zu viele Verbindungen von Rolle",
        "zu viele Verbindungen für Datenbank",
        "die verbleibenden Verbindungen sind für Superuser",
    ),
    "es": (
        "ya tenemos demasiados clientes",
        "demasiadas conexiones para el rol",
        "demasiadas conexiones para la base de datos",
        "las conexiones restantes están reservadas",
    ),
    "fr": (
        "trop de clients sont déjà connectés",
        "trop de connexions pour le rôle",
        "trop de connexions pour la base de données",
        "les emplacements de connexions restants sont réservés",
    ),
    "it": (
        "troppi client già connessi",
        "troppe connessioni per il ruolo",
        "troppe connessioni al database",
        "i rimanenti slot di connessione sono riservati",
    ),
    "ja": (
        "現在クライアント数が多すぎます",
        "からの接続が多すぎます",
        "への接続が多すぎます",
        "残りの接続スロットは",
    ),
    "ka": (
        "უკვე მეტისმეტად ბევრი კლიენტია",
        "მეტისმეტად ბევრი კავშირი როლისთვის",
        "ძალიან ბევრი კავშირი ბაზისთვის",
    ),
    "ko": (
        "최대 동시 접속자 수를 초과했습니다",
        "롤의 최대 동시 접속수를 초과했습니다",
        "데이터베이스 최대 접속수를 초과했습니다",
        "남은 연결 슬롯은",
    ),
    "ru": (
        "уже слишком много клиентов",
        "слишком много подключений для роли",
        "слишком много подключений к БД",
        "оставшиеся слоты подключений зарезервированы",
    ),
    "sv": (
        "ledsen, för många klienter",
        "för många uppkopplingar för roll",
        "för många uppkopplingar till databasen",
        "resterande anslutningsslottar är reserverade",
    ),
    "uk": (
        "вже забагато клієнтів",
        "занадто багато підключень для ролі",
        "занадто багато підключень до бази даних",
        "слоти підключень, які залишились, зарезервовані",
    ),
    "zh_CN": (
        "已经有太多的客户",
        "的连接太多了",  # a role's and a database's limit alike
        "已保留的连接位置为执行非复制请求的超级用户预留",
    ),
}

_CAPACITY = re.compile(
    "|".join(re.escape(f) for fragments in CAPACITY_FRAGMENTS.values() for f in fragments)
)


def refused_for_capacity(message: str) -> bool:
    """Whether a connection failure is a live server refusing new sessions (53300), in
    any language PostgreSQL speaks it."""
    return _CAPACITY.search(message) is not None
