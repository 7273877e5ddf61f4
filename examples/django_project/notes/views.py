"""Write on the primary, read on a standby; each answer names the alias that served it."""

from __future__ import annotations

from typing import Any

from django.http import JsonResponse

from .models import Note


def add(request: Any) -> JsonResponse:
    """Create a note (routed to the primary)."""
    note = Note.objects.create(text=request.GET.get("text", ""))
    return JsonResponse({"id": note.pk, "written_on": note._state.db})


def index(request: Any) -> JsonResponse:
    """The newest notes (routed to a standby, or the primary after this client wrote)."""
    notes = Note.objects.order_by("-id")[:20]
    return JsonResponse({"read_on": notes.db, "notes": [n.text for n in notes]})
