from services.face.main import DEFINITION
from services.common.runner import run_service

run_service(DEFINITION)
