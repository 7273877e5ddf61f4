"""Views that report which database alias served them."""

from __future__ import annotations

from typing import Any

from django.http import HttpResponse, JsonResponse
from django.template import engines

from .models import Note


def write(request: Any) -> JsonResponse:
    """Create a note, then read it back in the same request."""
    note = Note.objects.create(text=request.GET.get("text", "x"))
    alias = Note.objects.all().db  # where a read goes now (the router decides once)
    seen = Note.objects.using(alias).filter(pk=note.pk).exists()
    return JsonResponse(
        {"id": note.pk, "write_db": note._state.db, "read_db": alias, "seen": seen}
    )


def read(request: Any) -> JsonResponse:
    """Read one note by id."""
    alias = Note.objects.all().db
    seen = Note.objects.using(alias).filter(pk=int(request.GET["id"])).exists()
    return JsonResponse({"read_db": alias, "seen": seen})


BANNER = "{% if pgfailover_writable %}writable{% else %}read-only{% endif %}"


def banner(request: Any) -> HttpResponse:
    """A page that shows a read-only banner from the template flag and the request's."""
    page = engines["django"].from_string(BANNER).render({}, request)
    return HttpResponse(f"{page} {request.pgfailover.writable}")
