"""One model: a note."""

from __future__ import annotations

from django.db import models


class Note(models.Model):
    """A row the tests write and read back."""

    text = models.CharField(max_length=200)

    class Meta:
        app_label = "djangoapp"
