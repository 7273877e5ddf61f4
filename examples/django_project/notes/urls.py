"""URLs of the example."""

from __future__ import annotations

from django.urls import path

from . import views

urlpatterns = [path("notes/", views.index), path("notes/add", views.add)]
