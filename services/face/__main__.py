from services.common.runner import run_service
from services.face.main import DEFINITION

run_service(DEFINITION)
