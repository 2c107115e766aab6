/* libFuzzer target: arbitrary text as a student config and as a teacher
 * config (the JSON documents operators write by hand). */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "models/config.h"
#include "models/teacher.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char *text = malloc(size + 1);
  if (!text)
    return 0;
  memcpy(text, data, size);
  text[size] = '\0';
  st_student_config student;
  st_student_config_parse(text, "fuzz.json", &student);
  st_teacher_config *teacher = malloc(sizeof *teacher);
  if (teacher) {
    st_teacher_config_parse(text, "fuzz.json", "/nonexistent", teacher);
    free(teacher);
  }
  free(text);
  return 0;
}
