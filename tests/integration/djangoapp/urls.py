"""URLs of the test app."""

from __future__ import annotations

from django.urls import path

from . import views

urlpatterns = [
    path("write", views.write),
    path("read", views.read),
    path("banner", views.banner),
]
