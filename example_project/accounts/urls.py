from django.urls import path

from . import views

app_name = "accounts"

urlpatterns = [
    path("", views.register, name="register"),
    path("register/", views.register),
    path("report/", views.enqueue_report, name="report"),
    path("jobs/<str:job_id>/", views.job_detail, name="job"),
    path("jobs/<str:job_id>/status.json", views.job_status, name="job_status"),
]
