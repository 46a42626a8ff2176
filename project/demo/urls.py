from django.urls import path

from . import views

app_name = "demo"
urlpatterns = [
    path("", views.index, name="index"),
    path("live/", views.live, name="live"),
    path("projects/<uuid:project_id>/flow/", views.run_flow, name="run-flow"),
]
