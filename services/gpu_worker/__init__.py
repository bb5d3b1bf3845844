"""GPU worker: ResNet50 fine-tuning on max slices, 2048-d DTL embeddings, Grad-CAM.

Entry points for the coordinator are in :mod:`services.gpu_worker.run`; Celery tasks in
:mod:`services.gpu_worker.tasks`.
"""
